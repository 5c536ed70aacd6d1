"""`mixjax export`: the weights of a budget as the mixture setting of another trainer."""

from __future__ import annotations

from pathlib import Path

DESCRIPTION = """Write the weights of one budget (from `mixjax optimize`'s weights file, or a
`mixjax mix` directory) in the form another trainer takes, domain names kept: --to levanter, a
`data: train_weights:` block to merge into a Levanter training config (its component names must be
mixjax's domain names); --to datasets, a Python snippet that mixes one Hugging Face dataset per
domain with `datasets.interleave_datasets(probabilities=...)`. mixjax's weights are fractions of
training tokens; interleave_datasets samples examples, so with --data DIR the probabilities are
the weights divided by each domain's mean example length (tokens) from DIR's manifest, renormalised."""

FORMATS = ("levanter", "datasets")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write the weights for Levanter or Hugging Face datasets",
                              description=DESCRIPTION)
    p.add_argument("weights", metavar="WEIGHTS",
                   help="a weights file (`mixjax optimize --out`), a MIX_DIR (its weights.json), FILE@BUDGET, or NAME=W,...")
    p.add_argument("--to", required=True, choices=FORMATS, help="the trainer's form")
    p.add_argument("--budget-tokens", metavar="N",
                   help="take the file's result for this budget (needed when it holds several)")
    p.add_argument("--data", metavar="DIR",
                   help="--to datasets: the prepared data, to turn token fractions into example probabilities")
    p.add_argument("--out", metavar="FILE", help="write here (default: print)")
    p.set_defaults(func=run)


def _weights_path(text: str) -> str:
    """WEIGHTS as a file: a MIX_DIR stands for MIX_DIR/weights.json (a FILE@BUDGET suffix kept)."""
    path, at, budget = text.rpartition("@") if "@" in text and not Path(text).exists() else (text, "", "")
    if Path(path).is_dir():
        path = str(Path(path) / "weights.json")
    return path + at + budget


def _describe(source: dict | None, weights_text: str) -> str:
    from mixjax.token_counts import tokens_text

    budget = source.get("budget") if source else None
    return f"mixjax export of {weights_text}" + (f" (optimised for {tokens_text(budget)} tokens)" if budget else "")


def levanter_block(weights: dict[str, float], header: str) -> str:
    """YAML: `data: train_weights: {domain: weight}` in domain order, with a comment saying where."""
    import yaml

    body = yaml.safe_dump({"data": {"train_weights": dict(weights)}}, sort_keys=False, default_flow_style=False)
    return (f"# {header}\n# Levanter: merge into your training config; the names must be those of your "
            "data components\n# (`data.components`, `data.configs` in older Levanter). Weights are token fractions.\n"
            + body)


def example_probabilities(weights: dict[str, float], data_dir: str | None) -> tuple[list[float], str]:
    """(probabilities in domain order, how they were made): the token weights divided by each
    domain's mean training example length in `data_dir`, renormalised; the weights as they are
    without `data_dir`."""
    from mixjax.errors import MixjaxError

    w = {d: float(x) for d, x in weights.items()}
    if data_dir is None:
        p, how = w, "token fractions (pass --data DIR to divide by each domain's mean example length)"
    else:
        from mixjax.data.prepare import read_manifest

        manifest = read_manifest(Path(data_dir)) if Path(data_dir).is_dir() else None
        if manifest is None:
            raise MixjaxError(f"--data: {data_dir} is not a prepared data directory (run `mixjax prepare`)")
        missing = [d for d in w if d not in manifest["domains"]]
        if missing:
            raise MixjaxError(f"--data: {data_dir} has no domain {missing[0]!r} (it has "
                              f"{', '.join(manifest['domains'])})")
        train = {d: manifest["domains"][d]["train"] for d in w}
        p = {d: w[d] * train[d]["examples"] / train[d]["tokens"] for d in w}
        how = f"examples: token weights / mean example tokens in {data_dir}"
    total = sum(p.values())
    return [p[d] / total for d in w], how


def datasets_snippet(weights: dict[str, float], header: str, data_dir: str | None) -> str:
    """Python: one dataset per domain, in the weights' order, mixed by interleave_datasets."""
    domains = list(weights)
    probabilities, how = example_probabilities(weights, data_dir)
    return "\n".join([
        f"# {header}",
        f"# probabilities: {how}",
        "from datasets import interleave_datasets, load_dataset",
        "",
        f"domains = {domains!r}",
        f"probabilities = {[float(p) for p in probabilities]!r}",
        "# one dataset per domain, in this order (e.g. the files you passed to `mixjax prepare`)",
        'parts = [load_dataset("json", data_files=f"{name}.jsonl", split="train") for name in domains]',
        'mixed = interleave_datasets(parts, probabilities=probabilities, seed=0, stopping_strategy="all_exhausted")',
        "",
    ])


def run(args) -> int:
    from mixjax.mixture import weights_and_source
    from mixjax.errors import MixjaxError
    from mixjax.io import check_output_path, write_text_atomic
    from mixjax.token_counts import parse_tokens

    if args.out:
        check_output_path(args.out, "--out")
    if args.data and args.to != "datasets":
        raise MixjaxError("--data: only --to datasets uses it (Levanter's weights are token fractions)")
    budget = parse_tokens(args.budget_tokens, "--budget-tokens") if args.budget_tokens else None
    weights, source = weights_and_source(_weights_path(args.weights), "WEIGHTS", budget)
    total = sum(weights.values())
    if any(w < 0 for w in weights.values()) or not total > 0:
        raise MixjaxError(f"WEIGHTS: {args.weights}: weights must be non-negative with a positive sum")
    weights = {d: w / total for d, w in weights.items()}
    header = _describe(source, args.weights)
    text = levanter_block(weights, header) if args.to == "levanter" else datasets_snippet(weights, header, args.data)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
