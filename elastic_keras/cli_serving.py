"""The serving commands of the command line: export, latency, predict, monitor, serve."""

from elastic_keras import commands as C


def _serve(sub):
    from elastic_keras.runs.quantized import ARGUMENTS as QUANTIZE

    formats = ("saved_model", "litert", "onnx")
    x = sub.add_parser("export", help="the cascade that exits early per image, one predictor "
                                      "per exit and manifest.json, for a runtime")
    x.add_argument("source", help="a run directory (its best checkpoint) or a .keras file")
    x.add_argument("--format", choices=formats, default="saved_model")
    x.add_argument("--out", default=None, help="default: RUN/export-FORMAT (-int8 quantized)")
    _add(x, QUANTIZE, C.cmd_export)
    lat = sub.add_parser("latency", help="p50/p95 latency of every exit's path and predictor "
                                         "in an export's runtime: latency.csv")
    lat.add_argument("source", help="an export folder, or a run/.keras (exported first)")
    lat.add_argument("--format", choices=formats, default=None,
                     help="default: the export's own; saved_model for a run")
    lat.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    lat.add_argument("--repeats", type=int, default=20)
    lat.set_defaults(func=C.cmd_latency)
    p = sub.add_parser("predict", help="classify PNG/JPEG files or folders through an export "
                                       "or a run")
    p.add_argument("source", help="an export folder, a run directory or a .keras file")
    p.add_argument("images", nargs="+")
    p.add_argument("--threshold", type=float, default=None,
                   help="default: the threshold the run's calibration or budget chose")
    p.add_argument("--runtime", choices=formats, default=None, dest="runtime",
                   help="export a run first and predict in this runtime")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=C.cmd_predict)


def _add(parser, arguments, func):
    for flags, options in arguments:
        parser.add_argument(*flags, **options)
    parser.set_defaults(func=func)


def add_serving(sub):
    """export, latency, predict; monitor and serve, whose arguments are data in their own
    modules."""
    _serve(sub)
    from elastic_keras.runs import monitor
    from elastic_keras.server import main as serve

    for name, module in (("monitor", monitor), ("serve", serve)):
        _add(sub.add_parser(name, help=module.HELP), module.ARGUMENTS, module.command)
