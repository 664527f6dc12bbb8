"""`python -m keras_attention.serving {check,export,request}`."""

import argparse
import json
import sys

from keras_attention.serving import _export_cli
from keras_attention.serving import _wire
from keras_attention.serving._check import check


def _request(args):
    try:
        inputs = _wire.load_request(args.inputs)
    except _wire.NotARequestBody as e:
        print(e, file=sys.stderr)
        return 1
    if args.protocol == "rest":
        url = _wire.rest_url(
            args.host, args.port or 8501, args.model, args.version
        )
        body = _wire.rest_body(inputs, args.format, args.signature)
        if args.dry_run:
            print(f"POST {url}")
            print(json.dumps(body))
            return 0
        print(json.dumps(_wire.send_rest(url, body, args.timeout)))
        return 0
    signature = args.signature or "serving_default"
    target = f"{args.host}:{args.port or 8500}"
    if args.saved_model:
        dtypes = _wire.signature_dtypes(args.saved_model, signature)
    elif not args.dry_run:
        dtypes = _wire.grpc_signature_dtypes(
            target, args.model, signature, args.version
        )
    else:
        dtypes = None  # JSON's own types: pass --saved-model to match
    request = _wire.predict_request(
        args.model, inputs, signature, args.version, dtypes
    )
    if args.dry_run:
        print(f"gRPC PredictionService/Predict -> {target}")
        print(request)
        return 0
    outputs = _wire.send_grpc(target, request, args.timeout)
    print(json.dumps({k: v.tolist() for k, v in outputs.items()}))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_attention.serving",
        description="Export .keras files for TensorFlow Serving, check "
        "SavedModel exports and query TensorFlow Serving.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "check",
        help="load an export as TF Serving does and run sample inputs",
    )
    p.add_argument("path", help="a version directory (with saved_model.pb)")
    p.add_argument(
        "--inputs",
        help="a REST request body (JSON, 'inputs' or 'instances' format); "
        "default: the export's assets.extra/sample_request.json if present",
    )
    p.add_argument("--expect", help="expected outputs (.npz, by output name)")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--json", help="also write the report to this JSON file")
    _export_cli.add_parser(sub)
    r = sub.add_parser("request", help="send a predict request to TF Serving")
    r.add_argument("--model", required=True, help="the served model's name")
    r.add_argument(
        "--inputs",
        required=True,
        help="{'inputs': {name: values}} JSON (b64 objects for bytes) or .npz",
    )
    r.add_argument("--version", type=int)
    r.add_argument("--signature", help="default: serving_default")
    r.add_argument("--protocol", choices=["rest", "grpc"], default="rest")
    r.add_argument(
        "--format", choices=["inputs", "instances"], default="inputs"
    )
    r.add_argument("--host", default="localhost")
    r.add_argument("--port", type=int, help="default: 8501 REST, 8500 gRPC")
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument(
        "--saved-model",
        help="gRPC: take the input dtypes from this local export (default: "
        "ask the server with GetModelMetadata)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the request instead of sending it",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export_cli.run(args, argv)
    if args.command == "check":
        return check(
            args.path,
            inputs=args.inputs,
            expect=args.expect,
            signature=args.signature,
            rtol=args.rtol,
            atol=args.atol,
            report=args.json,
        ).returncode
    return _request(args)


if __name__ == "__main__":
    sys.exit(main())
