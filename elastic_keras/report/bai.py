"""Bai et al. Table II: MACs at the first weighted exit and at the last exit, ours beside theirs.

Only this table of Bai et al. is reproduced; their age-estimation results are out of scope
(FIDELITY.md O1).

For VGG-16 (the plain network, as in their row), InceptionV3, ResNet-50 and MobileNet at alpha
1, 0.75, 0.5, 0.25, at 224x224 with C = 100 classes: the first exit whose loss weight is
non-zero under Bai et al.'s weighting (`loss_weights("second_half")`), and the
multiply-accumulates of that exit and of the last exit under both conventions ("full"; "bai":
depthwise convolutions left out, as their counter did). The check needs every bai-convention
number within 2% of the paper's and every first weighted exit equal (FIDELITY.md I8, I9, I10).
"""

import os

from elastic_keras import files
from elastic_keras.report import paper
from elastic_keras.report.numbers import macs, pct, text

CLASSES = 100
INPUT_SIZE = 224
TOLERANCE = 0.02

# (paper's model name, alpha or None, registry name, plain, the authors'-code variant or None)
ROWS = (
    ("VGG16", None, "vgg16", True, None),
    ("InceptionV3", None, "inceptionv3", False, "inceptionv3_authors"),
    ("ResNet50", None, "resnet50", False, None),
    ("MobileNet", 1.0, "mobilenet", False, "mobilenet_authors"),
    ("MobileNet", 0.75, "mobilenet", False, "mobilenet_authors"),
    ("MobileNet", 0.5, "mobilenet", False, "mobilenet_authors"),
    ("MobileNet", 0.25, "mobilenet", False, "mobilenet_authors"),
)

COLUMNS = ("model", "alpha", "backbone", "outputs", "first_weighted_exit", "first_weighted_output",
           "paper_first_weighted_exit", "macs_first_full", "macs_first_bai", "paper_macs_first",
           "rel_diff_first_bai", "macs_last_full", "macs_last_bai", "paper_macs_last",
           "rel_diff_last_bai", "last_head_macs")


def measure(backbone, alpha, plain):
    """Our numbers for one registry model at 224 px, C = 100."""
    from elastic_keras.training.loss_weights import loss_weights
    from elastic_keras.model.factory import build_model
    from elastic_keras.model.exits import exit_info

    model = build_model(backbone, CLASSES, input_size=INPUT_SIZE, alpha=alpha, weights=None,
                        plain=plain)
    full, bai = exit_info(model, "full"), exit_info(model, "bai")
    first = loss_weights("second_half", len(full)).index(1.0) + 1  # 1-based
    kernel = model.get_layer(full[-1].output).kernel
    return dict(outputs=len(full), first_weighted_exit=first,
                first_weighted_output=full[first - 1].output,
                macs_first_full=full[first - 1].macs, macs_first_bai=bai[first - 1].macs,
                macs_last_full=full[-1].macs, macs_last_bai=bai[-1].macs,
                last_head_macs=int(kernel.shape[0]) * int(kernel.shape[1]))


def rel(ours, theirs):
    return None if theirs is None else (ours - theirs) / theirs


def bai_table2(out_dir="results", log=print):
    """Write <out_dir>/bai_table2.{csv,md}; returns (csv path, md path, check passed)."""
    theirs_all = paper.bai_table2()
    rows, variants = [], []
    for model, alpha, backbone, plain, variant in ROWS:
        ours = measure(backbone, alpha, plain)
        theirs = theirs_all.get((model, alpha), {})
        row = dict(model=model, alpha="" if alpha is None else alpha, backbone=backbone,
                   **{k: ours[k] for k in ("outputs", "first_weighted_exit",
                                           "first_weighted_output")},
                   paper_first_weighted_exit=theirs.get("first"),
                   macs_first_full=ours["macs_first_full"], macs_first_bai=ours["macs_first_bai"],
                   paper_macs_first=theirs.get("macs_first"),
                   rel_diff_first_bai=rel(ours["macs_first_bai"], theirs.get("macs_first")),
                   macs_last_full=ours["macs_last_full"], macs_last_bai=ours["macs_last_bai"],
                   paper_macs_last=theirs.get("macs_last"),
                   rel_diff_last_bai=rel(ours["macs_last_bai"], theirs.get("macs_last")),
                   last_head_macs=ours["last_head_macs"])
        rows.append(row)
        if variant:  # the authors'-code variant of the same row, for the record
            variants.append((model, alpha, backbone, variant, ours,
                             measure(variant, alpha, plain), theirs))
        log(f"{model:<12} {text(alpha):>5}  first weighted exit "
            f"{row['first_weighted_exit']:>2} (paper {text(row['paper_first_weighted_exit'])}): "
            f"bai {macs(row['macs_first_bai'])} vs paper {macs(row['paper_macs_first'])} "
            f"({pct(row['rel_diff_first_bai'])}); last exit bai "
            f"{macs(row['macs_last_bai'])} vs paper {macs(row['paper_macs_last'])} "
            f"({pct(row['rel_diff_last_bai'])})")
    ok, check = _check(rows)
    csv_path = files.write_csv(os.path.join(out_dir, "bai_table2.csv"), COLUMNS, rows)
    md_path = files.write_text(os.path.join(out_dir, "bai_table2.md"),
                               _markdown(rows, _variant_lines(variants), check))
    log(check)
    return csv_path, md_path, ok


def _check(rows):
    """Every bai-convention number within 2%, every first weighted exit equal."""
    diffs = [r[k] for r in rows for k in ("rel_diff_first_bai", "rel_diff_last_bai")
             if r[k] is not None]
    index_ok = all(r["paper_first_weighted_exit"] in (None, r["first_weighted_exit"])
                   for r in rows)
    worst = max(abs(d) for d in diffs)
    ok = index_ok and len(diffs) == 2 * len(rows) and worst <= TOLERANCE
    return ok, (f"check: {len(diffs)} bai-convention MACs of {len(rows)} rows within "
                f"{100 * TOLERANCE:.0f}% of Bai et al. (max |rel diff| {100 * worst:.2f}%), "
                f"first weighted exits {'match' if index_ok else 'DIFFER'}: "
                f"{'PASS' if ok else 'FAIL'}")


def _variant_lines(variants):
    lines = []
    for model, alpha, backbone, variant, ours, v, theirs in variants:
        same = all(ours[k] == v[k] for k in ("first_weighted_exit", "macs_first_bai",
                                             "macs_last_bai"))
        within = all(t is not None and abs(rel(o, t)) <= TOLERANCE for o, t in (
            (v["macs_first_bai"], theirs.get("macs_first")),
            (v["macs_last_bai"], theirs.get("macs_last"))))
        lines.append(
            f"- {model}{'' if alpha is None else f' alpha {alpha}'}: `{variant}` "
            f"({v['outputs']} outputs) has first weighted exit {v['first_weighted_exit']} and "
            f"bai-convention MACs {macs(v['macs_first_bai'])} / {macs(v['macs_last_bai'])}: "
            f"{'identical to' if same else 'different from'} `{backbone}` "
            f"({ours['outputs']} outputs); {'within' if within else 'NOT within'} 2% of the "
            "paper.")
    return lines


def _markdown(rows, variant_lines, check):
    head = ("| model | alpha | outputs | first weighted exit | paper first weighted exit | "
            "MACs first (full) | MACs first (bai) | paper MACs first | diff first (bai) | "
            "MACs last (full) | MACs last (bai) | paper MACs last | diff last (bai) |")
    lines = [
        "# Bai et al. (2018), Table II: MACs at the first weighted exit and at the last exit",
        "",
        "Generated by `python -m elastic_keras bai-table2` (`make reproduce-bai-table2`); "
        "do not edit.",
        "",
        f"- Input 224x224x3, **C = {CLASSES} classes** (our choice: the class count Bai et al. "
        "counted with is not stated; only the exits' Dense layers depend on it).",
        "- First weighted exit: Bai et al.'s loss weighting, w_p = 0 for p < ceil(P/2) "
        "(1-based among the model's P outputs, `loss_weights(\"second_half\")`). VGG-16 is the "
        "plain network (one output), as in their row.",
        "- MACs up to and including that exit's head (other exits' heads not counted). "
        "\"full\" counts Conv2D, DepthwiseConv2D, SeparableConv2D and Dense; \"bai\" leaves "
        "depthwise convolutions out, as Bai et al.'s counter (a patched Keras layer summary) "
        "did. Differences are (ours, bai convention - paper) / paper.",
        "- Columns named \"paper\" hold Bai et al.'s numbers (shipped with the package).",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], text(r["alpha"] if r["alpha"] != "" else None), str(r["outputs"]),
            f"{r['first_weighted_exit']} (`{r['first_weighted_output']}`)",
            text(r["paper_first_weighted_exit"]),
            macs(r["macs_first_full"]), macs(r["macs_first_bai"]), macs(r["paper_macs_first"]),
            pct(r["rel_diff_first_bai"]),
            macs(r["macs_last_full"]), macs(r["macs_last_bai"]), macs(r["paper_macs_last"]),
            pct(r["rel_diff_last_bai"])]) + " |")
    lines += ["", f"**{check}**", "",
              "Which variant: the rows use the paper text's networks (`mobilenet`: alpha as in "
              "the row, 13 outputs; `inceptionv3`: 11 outputs). The authors'-code variants "
              "add an exit on the last block, which moves neither the first weighted exit "
              "(ceil(14/2) = ceil(13/2) = 7, ceil(12/2) = ceil(11/2) = 6) nor any counted MAC:",
              *variant_lines, "",
              "Class count: the last exit's Dense head at C = 100 costs "
              + ", ".join(f"{r['model']}{'' if r['alpha'] == '' else ' ' + str(r['alpha'])} "
                          f"{100 * r['last_head_macs'] / r['macs_last_bai']:.2f}%"
                          for r in rows)
              + " of the bai-convention total; at C = 1000 it would be ten times that.", ""]
    return "\n".join(lines)


