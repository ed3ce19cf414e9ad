"""`dmpose convert`, `dmpose info`, `dmpose export`: weight import, checkpoint inspection, export."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dmpose.cli.errors import reported
from dmpose.cli.parsing import parse_pair
from dmpose.cli.weights import resolve_ckpt_option
from dmpose.models import build_model, list_models
from dmpose.models.checkpoint import checkpoint_summary, read_checkpoint_spec
from dmpose.models.convert import convert_checkpoint
from dmpose.models.export import export_checkpoint
from dmpose.models.flops import count_macs
from dmpose.models.registry import has_position_bias
from dmpose.spec import IMAGENET_MEAN, IMAGENET_STD
from dmpose.train.config import packaged_configs

__all__ = ["convert_command", "export_command", "info_command"]

console = Console()


def convert_command(
    src: Path = typer.Argument(..., help="Foreign weights: .pth/.pt/.ckpt (read weights_only) or .safetensors."),
    arch: str = typer.Option(..., "--arch", help="Target architecture, e.g. hrnet_w32 (see `dmpose info --list`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output dmpose checkpoint (.safetensors)."),
    num_joints: int | None = typer.Option(None, help="Heatmap channels; default: the source head's, else 17."),
    partial: bool = typer.Option(False, "--partial", help="Accept a backbone-only load; missing keys keep their init."),
    input_wh: str | None = typer.Option(None, "--input-wh", help="Input WIDTHxHEIGHT; default the official "
                                        "recipe's: 192x256 (COCO), 256x256 (MPII)."),
    keypoints: str | None = typer.Option(None, "--keypoints", help="Keypoint set: coco17, mpii16 or a YAML file; "
                                         "default by joint count (17 coco17, 16 mpii16)."),
    mean: str | None = typer.Option(None, "--mean", help="Normalisation mean R,G,B (0-1); default ImageNet's."),
    std: str | None = typer.Option(None, "--std", help="Normalisation std R,G,B (0-1); default ImageNet's."),
    channel_order: str = typer.Option("RGB", "--channel-order", help="The network's input channel order: RGB "
                                      "(official models) or BGR."),
    decode: str | None = typer.Option(None, "--decode", help="argmax (default: the official models are "
                                      "MSE-trained) or 2x2 (DM-trained weights)."),
) -> None:
    """Convert official HRNet/HRFormer, MMPose, ImageNet HRNet or torchvision ResNet weights to a dmpose
    checkpoint with a full spec (what the weights do not say defaults to the official recipes, listed below)."""
    def triple(text: str | None, option: str, default):
        if text is None:
            return default
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise typer.BadParameter(f"{option} must be three comma-separated numbers, got {text!r}")
        return values

    wh = parse_pair(input_wh, "x", "--input-wh", int) if input_wh else None
    norm = None
    if mean is not None or std is not None or channel_order != "RGB":
        norm = {"mean": triple(mean, "--mean", IMAGENET_MEAN), "std": triple(std, "--std", IMAGENET_STD),
                "channel_order": channel_order}
    with reported(console):
        try:
            report = convert_checkpoint(src, arch, out, num_joints=num_joints, partial=partial, input_wh=wh,
                                        keypoints=keypoints, normalisation=norm, decode=decode)
        except (ValueError, FileNotFoundError) as err:  # the library's wording, the CLI's flag name
            if "partial=True" not in str(err):
                raise
            raise ValueError(str(err).replace("partial=True", "--partial")) from None
    table = Table(title=escape(f"{src.name} -> {out} ({report.arch}, {report.num_joints} joints)"))
    table.add_column("what")
    table.add_column("keys", justify="right")
    table.add_column("detail", overflow="fold")
    table.add_row("loaded", str(len(report.loaded)), f"{report.renamed} renamed by prefix rules")
    if report.layout:
        table.add_row("layout", str(report.layout_renamed),
                      escape(f"{report.layout}: renamed or merged to dmpose's names"))
    for reason, keys in report.dropped.items():
        table.add_row("dropped", str(len(keys)), escape(reason))
    if report.missing:
        shown = ", ".join(report.missing[:12]) + (" ..." if len(report.missing) > 12 else "")
        table.add_row("[yellow]left at init[/yellow]", str(len(report.missing)), escape(shown))
    if report.head_shape_skipped:
        skipped = report.head_shape_skipped
        table.add_row("[yellow]head shape differs[/yellow]", str(len(skipped)), escape("; ".join(skipped)))
    if report.tracking_missing:
        table.add_row("absent num_batches_tracked", str(report.tracking_missing), "left at 0 (no effect on outputs)")
    console.print(table)
    spec = report.spec
    console.print(escape(f"spec: {spec.keypoints.name}, input {spec.input_wh[0]}x{spec.input_wh[1]} (W x H), "
                         f"heatmaps {spec.heatmap_wh[0]}x{spec.heatmap_wh[1]}, decode {spec.decode}, normalisation "
                         f"{spec.normalisation.channel_order} mean {spec.normalisation.mean} "
                         f"std {spec.normalisation.std}"
                         + "".join(f", {text}" for _, text in _attention_rows(spec))), highlight=False)
    if report.defaulted:
        console.print(escape("defaults of the official recipes (not stated by the weights): "
                             + ", ".join(report.defaulted)), highlight=False)


def _attention_rows(spec) -> list[tuple[str, str]]:
    """The card's row for the relative position bias (`PoseSpec.relative_position_bias`), for architectures
    that have one."""
    if not has_position_bias(spec.arch):
        return []
    if spec.relative_position_bias:
        return [("attention", "relative position bias on")]
    return [("attention", "relative position bias off (the official HRFormer pose code's attention)")]


def _compute_rows(arch: str, num_joints: int, size: tuple[int, int]) -> list[tuple[str, str]]:
    """Parameter count and GFLOPs (MACs) at `size` in both counting conventions (see dmpose.models.flops)."""
    model = build_model(arch, num_joints=num_joints, device="meta")
    params = sum(p.numel() for p in model.parameters())
    plain = count_macs(model, size)
    full = count_macs(model, size, attention=True)
    where = f"{size[0]}x{size[1]}"
    rows = [("parameters", f"{params:,} ({params / 1e6:.1f}M)"),
            ("GFLOPs", f"{plain / 1e9:.2f} at {where} (MACs of conv + linear layers)")]
    if full != plain:
        rows.append(("GFLOPs with attention", f"{full / 1e9:.2f} at {where} (plus the attention matmuls)"))
    return rows


def info_command(
    ckpt: Path | None = typer.Argument(None, help="A dmpose checkpoint (.safetensors)."),
    full: bool = typer.Option(False, "--full", help="Every metadata field (the spec JSON, the training config)."),
    list_: bool = typer.Option(False, "--list", help="List the architectures (as `dmpose models list`)."),
    arch: str | None = typer.Option(None, "--arch", help="Show an architecture's parameters and GFLOPs instead."),
    input_wh: str | None = typer.Option(None, "--input-wh", help="GFLOPs at WIDTHxHEIGHT; default: the checkpoint's, "
                                        "else 192x256."),
) -> None:
    """A checkpoint's card: architecture, keypoints, input, decode, loss, parameters, GFLOPs and the validation
    metric it was saved with (--full: every metadata field); or an architecture's parameters and GFLOPs (--arch).
    GFLOPs are multiply-accumulates of the conv and linear layers, as the pose papers count them; transformers
    also get a figure with the attention matmuls."""
    wh = parse_pair(input_wh, "x", "--input-wh", int) if input_wh else None
    size = (wh[1], wh[0]) if wh else None  # (H, W) for the FLOP count
    if arch is not None:
        with reported(console):
            rows = _compute_rows(arch, 17, size or (256, 192))
        console.print(_table(f"{arch} (17 joints)", rows))
        return
    if list_ or ckpt is None:
        models_list_command()
        return
    with reported(console):
        summary = checkpoint_summary(ckpt)
    try:
        spec = read_checkpoint_spec(ckpt)
    except ValueError:  # an old file that names no keypoint set: its fields are all there is to show
        spec, full = None, True
    size = size or (tuple(spec.input_hw) if spec else tuple(summary.get("input_size") or (256, 192)))
    if full:
        rows = []
        for key, value in summary.items():
            if key == "parameters":
                value = f"{value:,} ({value / 1e6:.1f}M)"
            elif key == "file_bytes":
                value = f"{value / 1e6:.1f} MB"
            elif not isinstance(value, str):
                value = json.dumps(value)
            rows.append((key, value))
        console.print(_table(str(ckpt), rows + _compute_rows(summary["arch"], summary["num_joints"], size)[1:]))
        return
    loss = summary.get("loss")
    loss_text = loss.get("name", "?") if isinstance(loss, dict) else str(loss or "not recorded")
    if isinstance(loss, dict) and loss.get("name") == "dm":
        terms = [f"{n} x {loss[k]:g}" for n, k in (("dm", "dm_weight"), ("ce", "aux_ce"), ("mse", "aux_mse"))
                 if isinstance(loss.get(k), (int, float)) and loss[k] > 0]
        loss_text = " + ".join(terms) if terms else "dm"
        loss_text += f" (eps {loss.get('eps')}, suppliers {loss.get('suppliers')} beta {loss.get('supplier_beta')})"
    codec = spec.codec
    metric = next(((k, summary[k]) for k in ("AP", "PCKh@0.5") if isinstance(summary.get(k), (int, float))), None)
    rows = [("arch", spec.arch), *_attention_rows(spec),
            ("keypoints", f"{spec.keypoints.name} ({spec.num_joints} joints)"),
            ("input", f"{spec.input_wh[0]}x{spec.input_wh[1]} (W x H), heatmaps {spec.heatmap_wh[0]}x"
                      f"{spec.heatmap_wh[1]}, {spec.normalisation.channel_order}"),
            ("decode", f"{codec.decode} of the {codec.supplier_map} map"
                       + (f" (beta {codec.supplier_beta:g})" if codec.supplier_map == "softplus" else "")),
            ("loss", loss_text),
            *_compute_rows(spec.arch, spec.num_joints, size),
            ("validation", f"{metric[0]} {metric[1]:.4f} at epoch {summary.get('epoch')}" if metric
             else "not recorded"),
            ("file", f"{summary['file_bytes'] / 1e6:.1f} MB, dmpose {summary.get('dmpose_version', '?')}")]
    console.print(_table(str(ckpt), rows))


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def models_list_command() -> None:
    """The architectures `build_model` knows, with parameters and GFLOPs at 256x192 (17 joints)."""
    table = Table(title="architectures (17 joints, 256x192 input)", title_justify="left")
    for name in ("arch", "parameters", "GFLOPs"):
        table.add_column(name, justify="left" if name == "arch" else "right")
    for name in list_models():
        model = build_model(name, num_joints=17, device="meta")
        params = sum(p.numel() for p in model.parameters())
        table.add_row(escape(name), f"{params / 1e6:.1f}M", f"{count_macs(model, (256, 192)) / 1e9:.2f}")
    console.print(table)


def configs_list_command() -> None:
    """The shipped configs (`dmpose train NAME`), with the first line of each one's comment."""
    table = Table(title="shipped configs (dmpose train NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("what it is", overflow="fold")
    for name, path in packaged_configs().items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")),
                     "")
        table.add_row(escape(name), escape(first.split(": docs/")[0]))
    console.print(table)


models_app = typer.Typer(help="The architectures dmpose builds.", no_args_is_help=True)
models_app.command("list")(models_list_command)
configs_app = typer.Typer(help="The configs dmpose ships.", no_args_is_help=True)
configs_app.command("list")(configs_list_command)


def export_command(
    ckpt: str = typer.Option(..., "--ckpt", help="A dmpose checkpoint (.safetensors), a published model's name "
                             "(`dmpose weights list`) or an http(s) URL."),
    fmt: str = typer.Option("onnx", "--format", help="onnx or safetensors."),
    with_decode: bool = typer.Option(False, "--with-decode", help="ONNX: add the checkpoint's decode (its spec's "
                                     "rule: 2x2 or argmax) as outputs coords and confidence."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output file; default next to the checkpoint."),
    input_wh: str | None = typer.Option(None, "--input-wh", help="ONNX input WIDTHxHEIGHT; default: the spec's."),
    image_coords: bool = typer.Option(False, "--image-coords", help="ONNX with --with-decode: the graph also takes "
                                      "each crop's box centre and size (inputs center, size: (B, 2) image px) and "
                                      "returns coords in image pixels."),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch axis; the spec in the file's metadata, so `dmpose predict` and
    `dmpose eval` run it) or re-write it as a dmpose .safetensors file."""
    size = parse_pair(input_wh, "x", "--input-wh", int) if input_wh else None
    if size is not None and min(size) <= 0:
        raise typer.BadParameter(f"--input-wh must be positive WIDTHxHEIGHT, got {input_wh!r}")
    with reported(console):
        ckpt_path = resolve_ckpt_option(ckpt, console)
        if out is None:  # next to the checkpoint; a fetched one's folder is the cache: the working folder then
            folder = ckpt_path.parent if Path(ckpt).expanduser().exists() else Path(".")
            out = folder / (ckpt_path.stem + (".onnx" if fmt == "onnx" else ".export.safetensors"))
        try:
            path = export_checkpoint(ckpt_path, out, fmt=fmt, with_decode=with_decode, input_wh=size,
                                     image_coords=image_coords)
        except (ValueError, FileNotFoundError, ImportError) as err:
            if "with_decode" not in str(err):
                raise
            raise ValueError(str(err).replace("with_decode", "--with-decode")) from None
    console.print(escape(f"wrote {path}"), highlight=False)
