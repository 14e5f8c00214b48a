"""The store's dataset card: `README.md` in the Hugging Face card format, written with the manifest.

A store uploaded as-is is then a valid Hub dataset: the YAML front matter points the Hub's `webdataset`
builder at the tar shards, and the body says what made the data, with which parameters and seed, what each
sample holds, the licence of any third-party content (MNIST digits), and the spec that regenerates it to the
same digest. The card is made from the manifest alone (canonical bytes, no timestamps) and is not part of the
dataset digest: the digest covers the data, the card only describes it.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from datagen.store.format import ARRAY_FIELDS, CARD_MARK, META_FIELDS, VIDEO_FIELD, schema_fields

MNIST_LICENCE = (
    "The digits are MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges), licensed CC BY-SA 3.0 "
    "(https://creativecommons.org/licenses/by-sa/3.0/); a dataset made from them is shared under the same "
    "licence, crediting the MNIST authors."
)
MNIST_GENERATORS = ("mnist", "mnist_test_seq")
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def is_mnist_based(manifest: dict[str, Any]) -> bool:
    """Clips drawn from MNIST digits (Moving MNIST, the fixed test sequences) carry MNIST's licence."""
    return manifest["generator"]["name"] in MNIST_GENERATORS or "source" in manifest["params"]


def _size_category(n: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>1M")


def _n_samples(manifest: dict[str, Any]) -> int:
    return max((t["n_samples"] for t in manifest["totals"].values()), default=0)


def front_matter(manifest: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata: Hub fields, and `configs` naming the tar shards when the store has them."""
    gen, layout = manifest["generator"], manifest["layout"]
    meta: dict[str, Any] = {"pretty_name": f"{layout['prefix']} ({gen['name']} v{gen['version']}, datagen)"}
    if is_mnist_based(manifest):
        meta["license"] = "cc-by-sa-3.0"
    meta["tags"] = ["video", "synthetic", "datagen"] + (["webdataset"] if "wds" in layout["formats"] else [])
    meta["size_categories"] = [_size_category(_n_samples(manifest))]
    if "wds" in layout["formats"]:
        meta["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": f"{layout['prefix']}-*.tar"}],
            }
        ]
    return meta


def _fields_table(manifest: dict[str, Any]) -> list[str]:
    sample = manifest["sample"]
    video = sample["video"]
    rows = [
        "| member | dtype | shape | what |",
        "|---|---|---|---|",
        f"| `<key>.{VIDEO_FIELD}` | {video['dtype']} | {tuple(video['shape'])} | clip, {video['layout']} |",
    ]
    for name in schema_fields(sample):
        if name in ARRAY_FIELDS:
            f = sample[name]
            rows.append(f"| `<key>.{name}.npy` | {f['dtype']} | {tuple(f['shape'])} | {f['layout']} |")
    rows.append(
        "| `<key>.meta.json` | JSON | | per-clip metadata of the generator (positions, labels, ...) |"
    )
    extra = [name for name in schema_fields(sample) if name in META_FIELDS]
    if extra:
        rows.append("")
        rows.append("Ground truth in `meta.json`: " + ", ".join(f"`{n}`" for n in extra) + ".")
    rows.append("")
    rows.append(f"`<key>` is the {sample['key']}. HDF5 shards (`.h5`) hold the same arrays as datasets.")
    return rows


def regeneration_spec(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The `datagen build` spec that regenerates this store to its digest; None for stores made from
    inputs rather than from (params, seed) alone (no fixed shard size)."""
    layout = manifest["layout"]
    if "shard_size" not in layout:
        return None
    return {
        "name": layout["prefix"],
        "generator": manifest["generator"]["name"],
        "generator_version": manifest["generator"]["version"],
        "params": manifest["params"],
        "seed": manifest["seed"],
        "n": layout["n_samples"],
        "shard_size": layout["shard_size"],
        "formats": layout["formats"],
        "digest": manifest["digest"],
    }


def _regenerate(manifest: dict[str, Any]) -> list[str]:
    spec = regeneration_spec(manifest)
    if spec is None:
        return [
            f"Made by `datagen {manifest['generator']['name']}` from the inputs its parameters record; "
            "the same inputs and parameters give the same digest.",
        ]
    return [
        "Save this spec as `spec.json` and run `datagen build spec.json --out DIR`: it regenerates the store "
        "byte for byte and exits 1 unless the digest matches.",
        "",
        "```json",
        json.dumps(spec, indent=2, sort_keys=True),
        "```",
    ]


def dataset_card(manifest: dict[str, Any]) -> str:
    """The card of a (validated) manifest, as text."""
    gen, layout = manifest["generator"], manifest["layout"]
    n = _n_samples(manifest)
    shards = ", ".join(
        f"{fmt}: {t['n_samples']} samples in {t['n_shards']} shards ({t['bytes'] / 1e6:.1f} MB)"
        for fmt, t in sorted(manifest["totals"].items())
    )
    licence = (
        [MNIST_LICENCE]
        if is_mnist_based(manifest)
        else ["Synthetic clips made by the generator alone: no third-party content."]
    )
    lines = [
        "---",
        yaml.safe_dump(front_matter(manifest), sort_keys=False, width=1000).rstrip(),
        "---",
        CARD_MARK,
        "",
        f"# {layout['prefix']}",
        "",
        f"{n} video clips made by the `{gen['name']}` generator (version {gen['version']}) of the datagen "
        f"toolkit, seed {manifest['seed']}. Sample i depends only on (parameters, seed, i): "
        f"`{manifest['seeding']}`.",
        "",
        f"Shards: {shards}. The WebDataset tars load with "
        f'`datasets.load_dataset("webdataset", data_files="{layout["prefix"]}-*.tar")` or the toolkit\'s '
        "`pipelines.VideoDataset`; `manifest.json` lists every shard with its size and sha256.",
        "",
        "## Fields",
        "",
        *_fields_table(manifest),
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(manifest["params"], indent=2, sort_keys=True),
        "```",
        "",
        "## Regenerate",
        "",
        *_regenerate(manifest),
        "",
        "## Digest",
        "",
        f"`{manifest['digest']}`: sha256 over the job record and every shard's (path, count, sha256). "
        "`datagen verify DIR` checks every shard against it.",
        "",
        "## Licence",
        "",
        *licence,
        "",
    ]
    return "\n".join(lines)
