"""Bai et al. Table II: MACs at the first weighted exit and at the last exit, ours beside theirs.

    python scripts/bai_table2.py [--paper-dir DIR] [--out-dir results]

Writes results/bai_table2.csv and results/bai_table2.md (atomically). For VGG-16 (the plain
network, as in their row), InceptionV3, ResNet-50 and MobileNet at alpha 1, 0.75, 0.5, 0.25,
at 224x224 with C = 100 classes: the first exit whose loss weight is non-zero under Bai et
al.'s weighting (`loss_weights("second_half")`), and the multiply-accumulates of that exit and
of the last exit under both conventions ("full"; "bai": depthwise convolutions left out, as
their counter did). The paper's numbers are read at run time from bai_table2_macs.csv in
--paper-dir (default $ELASTIC_PAPER_DIR, else <repo>/../shared/reference); the check needs
every bai-convention number within 2% of the paper's, and exits non-zero otherwise.
"""

import argparse
import csv
import io as _io
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_DIR_ENV = "ELASTIC_PAPER_DIR"
PAPER_FILE = "bai_table2_macs.csv"
CLASSES = 100
INPUT_SIZE = 224
TOLERANCE = 0.02
BLANK = "—"

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


def default_paper_dir():
    """$ELASTIC_PAPER_DIR, else <repo>/../shared/reference."""
    return os.environ.get(PAPER_DIR_ENV) or os.path.join(os.path.dirname(REPO), "shared",
                                                         "reference")


def read_paper(path):
    """{(model, alpha or None): row of floats/None}, or None when the file is absent."""
    if not os.path.isfile(path):
        return None

    def num(v):
        return float(v) if v not in ("", None) else None

    with open(path, newline="", encoding="utf-8") as f:
        return {(r["model"], num(r["alpha"])): {
            "first": int(num(r["first_weighted_exit"])) if num(r["first_weighted_exit"]) else None,
            "macs_first": num(r["macs_first_exit"]), "macs_last": num(r["macs_last_exit"])}
            for r in csv.DictReader(f)}


def measure(backbone, alpha, plain):
    """Our numbers for one registry model at 224 px, C = 100."""
    from elastic_keras import build_model, exit_info, loss_weights

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


def rel(ours, paper):
    return None if paper is None else (ours - paper) / paper


def fmt(v, kind="macs"):
    if v is None or v == "":
        return BLANK
    if kind == "macs":
        return f"{v:.2e}".replace("e+0", "e").replace("e+", "e")
    if kind == "pct":
        return f"{100 * v:+.2f}%"
    return str(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper-dir", default=None,
                   help=f"folder holding {PAPER_FILE} (default ${PAPER_DIR_ENV}, "
                        f"else <repo>/../shared/reference)")
    p.add_argument("--out-dir", default=os.path.join(REPO, "results"))
    args = p.parse_args(argv)
    from elastic_keras import files

    paper_path = os.path.join(args.paper_dir or default_paper_dir(), PAPER_FILE)
    paper = read_paper(paper_path)
    if paper is None:
        print(f"note: paper numbers not found at {paper_path}; their columns stay blank "
              f"(pass --paper-dir or set ${PAPER_DIR_ENV})")

    rows, variants = [], []
    for model, alpha, backbone, plain, variant in ROWS:
        ours = measure(backbone, alpha, plain)
        theirs = (paper or {}).get((model, alpha), {})
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
            v = measure(variant, alpha, plain)
            variants.append((model, alpha, backbone, variant, ours, v, theirs))
        print(f"{model:<12} {fmt(alpha, 'x'):>5}  first weighted exit "
              f"{row['first_weighted_exit']:>2} (paper {fmt(row['paper_first_weighted_exit'], 'x')}): "
              f"bai {fmt(row['macs_first_bai'])} vs paper {fmt(row['paper_macs_first'])} "
              f"({fmt(row['rel_diff_first_bai'], 'pct')}); last exit bai "
              f"{fmt(row['macs_last_bai'])} vs paper {fmt(row['paper_macs_last'])} "
              f"({fmt(row['rel_diff_last_bai'], 'pct')})")

    # The check: every bai-convention number within 2%, every first weighted exit equal.
    diffs = [r[k] for r in rows for k in ("rel_diff_first_bai", "rel_diff_last_bai")
             if r[k] is not None]
    index_ok = all(r["paper_first_weighted_exit"] in (None, r["first_weighted_exit"])
                   for r in rows)
    worst = max((abs(d) for d in diffs), default=None)
    if paper is None:
        check = "check: skipped (no paper numbers)"
        ok = True
    else:
        ok = index_ok and len(diffs) == 2 * len(rows) and worst <= TOLERANCE
        check = (f"check: {len(diffs)} bai-convention MACs of {len(rows)} rows within "
                 f"{100 * TOLERANCE:.0f}% of Bai et al. (max |rel diff| {100 * worst:.2f}%), "
                 f"first weighted exits {'match' if index_ok else 'DIFFER'}: "
                 f"{'PASS' if ok else 'FAIL'}")

    variant_lines = []
    for model, alpha, backbone, variant, ours, v, theirs in variants:
        same = all(ours[k] == v[k] for k in ("first_weighted_exit", "macs_first_bai",
                                             "macs_last_bai"))
        within = all(t is not None and abs(rel(o, t)) <= TOLERANCE for o, t in (
            (v["macs_first_bai"], theirs.get("macs_first")),
            (v["macs_last_bai"], theirs.get("macs_last"))))
        variant_lines.append(
            f"- {model}{'' if alpha is None else f' alpha {alpha}'}: `{variant}` "
            f"({v['outputs']} outputs) has first weighted exit {v['first_weighted_exit']} and "
            f"bai-convention MACs {fmt(v['macs_first_bai'])} / {fmt(v['macs_last_bai'])}: "
            f"{'identical to' if same else 'different from'} `{backbone}` "
            f"({ours['outputs']} outputs); "
            + (f"{'within' if within else 'NOT within'} 2% of the paper." if theirs
               else "no paper numbers to compare."))

    # CSV: full integers and plain ratios.
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    csv_path = os.path.join(args.out_dir, "bai_table2.csv")
    md_path = os.path.join(args.out_dir, "bai_table2.md")
    files.write_text(csv_path, buf.getvalue())
    files.write_text(md_path, _markdown(rows, variant_lines, check, paper_path, paper is not None))
    print(f"wrote {csv_path}, {md_path}")
    print(check)
    return 0 if ok else 1


def _markdown(rows, variant_lines, check, paper_path, have_paper):
    head = ("| model | alpha | outputs | first weighted exit | paper first weighted exit | "
            "MACs first (full) | MACs first (bai) | paper MACs first | diff first (bai) | "
            "MACs last (full) | MACs last (bai) | paper MACs last | diff last (bai) |")
    lines = [
        "# Bai et al. (2018), Table II: MACs at the first weighted exit and at the last exit",
        "",
        "Generated by `scripts/bai_table2.py` (`make reproduce-bai-table2`); do not edit.",
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
        "- Columns named \"paper\" hold Bai et al.'s numbers, read from "
        f"`{PAPER_FILE}`" + ("" if have_paper else " (not found: left blank)") + ".",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], fmt(r["alpha"] if r["alpha"] != "" else None, "x"), str(r["outputs"]),
            f"{r['first_weighted_exit']} (`{r['first_weighted_output']}`)",
            fmt(r["paper_first_weighted_exit"], "x"),
            fmt(r["macs_first_full"]), fmt(r["macs_first_bai"]), fmt(r["paper_macs_first"]),
            fmt(r["rel_diff_first_bai"], "pct"),
            fmt(r["macs_last_full"]), fmt(r["macs_last_bai"]), fmt(r["paper_macs_last"]),
            fmt(r["rel_diff_last_bai"], "pct")]) + " |")
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


if __name__ == "__main__":
    sys.exit(main())
