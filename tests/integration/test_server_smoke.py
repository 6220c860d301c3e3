"""The package loads in a real ComfyUI and the native nodes our outputs feed are there."""

PACKAGE = "ComfyUI-SyncAV"


def test_server_starts_and_package_imports(comfy_server):
    info = comfy_server.object_info()
    for native in ("CreateVideo", "SaveVideo"):
        assert native in info, f"native node {native} missing from /object_info"

    log = comfy_server.log_text()
    failed = [line for line in log.splitlines()
              if "IMPORT FAILED" in line and PACKAGE in line
              or "Cannot import" in line and PACKAGE in line]
    assert not failed, "ComfyUI failed to import the package:\n" + "\n".join(failed) + "\n" + comfy_server.log_tail()
    # V3 nodes: registered through comfy_entrypoint (its failures are only a warning in the log)
    assert "Error while calling comfy_entrypoint" not in log, comfy_server.log_tail()
    ours = sorted(name for name, entry in info.items() if entry["python_module"] == f"custom_nodes.{PACKAGE}")
    assert len(ours) == 15 and all(name.startswith("SyncAV") for name in ours), ours
    # ComfyUI logs every custom-node folder it imported in its "Import times for custom nodes" table
    assert any(PACKAGE in line and "seconds" in line for line in log.splitlines()), comfy_server.log_tail()
    # The package switched MKL's reproducible mode on before ComfyUI computed anything (runtime/reproducible_blas.py):
    # otherwise it warns, and a resumed DPO run in this server would not repeat the straight one bit for bit.
    assert "reproducible mode is unavailable" not in log, comfy_server.log_tail()
