"""`mixjax prepare`: tokenise domain source files into TFDS datasets with a manifest."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers) -> None:
    from mixjax.data.prepare import MAX_RECORD_BYTES, PrepareOptions  # the defaults, stated there
    from mixjax.data.formats import FORMATS
    from mixjax.data.template import LOSS_ON

    default = {f.name: f.default for f in dataclasses.fields(PrepareOptions)}
    p = subparsers.add_parser(
        "prepare", help="tokenise domain files into TFDS (array_record) datasets",
        description="Tokenise each domain's JSONL/Parquet files (chat template, loss mask), split "
                    "train/validation deterministically, and write one TFDS dataset per domain plus "
                    "manifest.json. Unchanged inputs are skipped on a rerun.")
    p.add_argument("--domain", action="append", default=[], metavar="NAME=PATH",
                   help="a domain and its file or directory of .jsonl/.parquet files (repeatable)")
    p.add_argument("--collection", action="append", default=[], metavar="PATH",
                   help="a file/directory to split into domains by --split-field (repeatable)")
    p.add_argument("--split-field", metavar="FIELD",
                   help="record field whose value names the domain (Tulu3: source; OpenOrca: id)")
    p.add_argument("--split-prefix", metavar="SEP",
                   help="use only the text before SEP of the split field (OpenOrca ids: '.')")
    p.add_argument("--format", action="append", default=[], metavar="[NAME=]FORMAT",
                   help="override format detection for one domain or all: " + ", ".join(FORMATS))
    p.add_argument("--out", required=True, help="output directory")
    # "byte", not PrepareOptions' None (the same tokenizer): the fingerprints of prepared data hold "byte"
    p.add_argument("--tokenizer", default="byte", help="'byte' or a directory with tokenizer.json")
    p.add_argument("--loss-on", choices=list(LOSS_ON), default=default["loss_on"],
                   help="train on assistant tokens only (SFT) or on all tokens (pre-training style)")
    p.add_argument("--validation-fraction", type=float, default=default["validation_fraction"])
    p.add_argument("--max-validation", type=int, default=default["max_validation"],
                   help="cap on validation examples per domain")
    p.add_argument("--max-record-bytes", type=int, default=default["max_record_bytes"], metavar="N",
                   help="refuse a record (JSONL line, or a Parquet row's text) longer than N bytes; "
                        f"memory in prepare is about 100x the largest record (default {MAX_RECORD_BYTES // 2**20} MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _formats(values: list[str]) -> tuple[str | None, dict[str, str]]:
    from mixjax.data.formats import check_format_name

    default, per_domain = None, {}
    for v in values:
        if "=" in v:
            name, fmt = v.split("=", 1)
            per_domain[name] = check_format_name(fmt, f"--format {v}")
        else:
            default = check_format_name(v, f"--format {v}")
    return default, per_domain


def run(args: argparse.Namespace) -> int:
    from mixjax.data.prepare import PrepareOptions, SourceSpec, parse_domain_flag, prepare
    from mixjax.data.sources import source_files
    from mixjax.errors import MixjaxError
    from mixjax.report import format_manifest

    default_format, per_domain = _formats(args.format)
    specs = [parse_domain_flag(v) for v in args.domain]
    names = [s.domain for s in specs]
    duplicate = sorted({n for n in names if names.count(n) > 1})
    if duplicate:
        raise MixjaxError(f"--domain: duplicate domain name '{duplicate[0]}'")
    unknown = sorted(set(per_domain) - set(names))
    if unknown:
        raise MixjaxError(f"--format: no --domain named '{unknown[0]}'")
    for s in specs:
        s.format = per_domain.get(s.domain, default_format)
    if args.collection and not args.split_field:
        raise MixjaxError("--collection needs --split-field")
    for path in args.collection:
        flag = f"--collection {path}"
        specs.append(SourceSpec(flag=flag, paths=source_files(path, flag), split_field=args.split_field,
                                split_prefix_sep=args.split_prefix, format=default_format))
    options = PrepareOptions(tokenizer=args.tokenizer, loss_on=args.loss_on,
                             validation_fraction=args.validation_fraction,
                             max_validation=args.max_validation, max_record_bytes=args.max_record_bytes)
    manifest = prepare(specs, args.out, options, progress=not args.quiet)
    print(format_manifest(manifest))
    _note_late_responses(args.out)
    return 0


def _note_late_responses(out) -> None:
    """The domains whose responses start after a row of train's default --seq-len, with counts."""
    from mixjax.data.prepare import late_response_note, late_responses
    from mixjax.data.prepared import PreparedData
    from mixjax.train.config import TrainConfig

    seq_len = TrainConfig().seq_len
    note = late_response_note(late_responses(PreparedData(out), seq_len), seq_len,
                              flag="--seq-len", default=True)
    if note:
        print(note)
