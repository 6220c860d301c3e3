"""``convert`` (a published .pth checkpoint to safetensors) and ``run`` (a workflow on a ComfyUI server)."""

from __future__ import annotations


def convert_command(args) -> int:
    from ..files.atomic import check_output_path
    from ..ovi.convert import convert_checkpoint

    check_output_path(args.output, "output", suffixes=(".safetensors",), inputs={"input": args.input})
    report = convert_checkpoint(args.input, args.output, kind=args.kind)
    notes = f" ({'; '.join(report.notes)})" if report.notes else ""
    print(f"wrote {args.output}: {report.kind}, {report.num_tensors} tensors{notes}")
    return 0


def run_command(args) -> int:
    from ..headless.runner import run_workflow

    return run_workflow(args.workflow, args.server, args.overrides, out_dir=args.out, timeout_seconds=args.timeout)
