"""`mednextv2 models`: list, inspect, download, import and remove models; show the cache folder."""
from __future__ import annotations

import argparse
import json
import sys

from mednextv2 import MODELS_DOC_URL
from mednextv2.cli.dataclass_args import add_dataclass_arguments, dataclass_from_args
from mednextv2.disk import format_size
from mednextv2.errors import InputError
from mednextv2.progress import MODES, make_progress
from mednextv2.schema import loads_strict, printable
from mednextv2.store.cache import ModelCache
from mednextv2.store.importer import ImportOptions


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models", help="list, download and import models",
        description="Manage the model cache. Models are found in the shipped catalog and in user catalogs "
                    "(MEDNEXTV2_CATALOGS, <home>/config.json, --catalog). The cache folder is MEDNEXTV2_HOME "
                    "or a per-user folder.")
    parser.add_argument("--home", help="cache folder (default: MEDNEXTV2_HOME or the per-user folder)")
    parser.add_argument("--catalog", action="append", default=[], metavar="PATH_OR_URL",
                        help="extra catalog, a local JSON file or an https URL (repeatable; plain http only with "
                             "MEDNEXTV2_ALLOW_HTTP=1)")
    parser.add_argument("--progress", choices=MODES, default="bar", help="progress display (json for the Slicer modules)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="catalog and installed models, with size and download state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("info", help="everything known about one model")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("download", help="download, verify and install a catalog model")
    p.add_argument("id")
    p.add_argument("--force", action="store_true", help="download again even if this version is installed")
    p.add_argument("--replace", action="store_true",
                   help="replace an installed model with the same id that was imported, not downloaded")
    p = sub.add_parser("import", help="install a local bundle, nnU-Net v2/v1 results folder/zip or MONAI MedNeXt (no internet needed)")
    p.add_argument("path", help="bundle folder or zip, or nnU-Net v2 or v1 results folder or zip")
    p.add_argument("--id", dest="model_id", help="model id to install it as (default: from the bundle or dataset name)")
    add_dataclass_arguments(p, ImportOptions)
    p.add_argument("--replace", action="store_true", help="replace an installed model with the same id")
    p = sub.add_parser("remove", help="delete an installed model")
    p.add_argument("id")
    p = sub.add_parser("path", help="print the cache folder, or an installed model's folder")
    p.add_argument("id", nargs="?")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    cache = ModelCache.open(args.home)
    return _ACTIONS[args.action](args, cache)


def _list(args, cache) -> int:
    from mednextv2.store.catalog import entries_with_status, load_catalog

    catalog = load_catalog(cache, args.catalog)
    rows = entries_with_status(catalog, cache)
    if args.json:
        print(json.dumps({"models": rows, "sources": list(catalog.sources), "problems": list(catalog.problems),
                          "home": str(cache.home)}, indent=2))
        return 0
    for problem in catalog.problems:
        _say(f"warning: could not read catalog {problem}", file=sys.stderr)
    if not rows:
        print(f"No models in the catalog and none installed in {cache.models_dir}.\n"
              f"Import one with `mednextv2 models import PATH` (see {MODELS_DOC_URL}).")
        return 0
    width = max(len(r["id"]) for r in rows)
    print(f"{'ID':<{width}}  {'VERSION':<10} {'SIZE':>9}  {'INSTALLED':<13} TITLE")
    for r in rows:
        _say(f"{r['id']:<{width}}  {r['version'] or '-':<10} {format_size(r['size']):>9}  {r['installed']:<13} "
             f"{r['title']}")
    return 0


def _say(text: str, file=None) -> None:
    """Print text that came from a catalog or a model.json: a terminal escape sequence in a
    title must not clear the screen or rewrite what was printed before, so only printable text."""
    print("\n".join(printable(line) for line in str(text).split("\n")), file=file)


def _info(args, cache) -> int:
    from mednextv2.store.catalog import load_catalog

    catalog = load_catalog(cache, args.catalog)
    info = {"id": args.id}
    if args.id in catalog:
        info["catalog"] = dict(catalog.get(args.id).to_dict(), source=catalog.get(args.id).source)
    if cache.is_installed(args.id):
        path = cache.model_dir(args.id)
        info["installed"] = {**cache.install_info(args.id), "path": str(path),
                             "model": loads_strict((path / "model.json").read_bytes(), str(path / "model.json"))}
    if len(info) == 1:
        catalog.get(args.id)  # raises the unknown-id error, listing what exists
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    entry = info.get("catalog") or {}
    model = (info.get("installed") or {}).get("model", {})
    _say(f"id:          {info['id']}")
    _say(f"title:       {entry.get('title') or model.get('title', '')}")
    if entry:
        _say(f"version:     {entry['version']}")
        _say(f"modality:    {entry['modality']}")
        _say(f"size:        {format_size(entry['size'])} ({entry['size']} bytes)")
        _say(f"sha256:      {entry['sha256']}")
        _say(f"license:     {entry['license']}")
        _say(f"citation:    {entry['citation']}")
        _say(f"catalog:     {entry['source']}")
        if entry.get("min_gpu_memory_gb") is not None:
            _say(f"min GPU mem: {entry['min_gpu_memory_gb']} GB")
        for key, value in (entry.get("timings") or {}).items():
            _say(f"time {key}: {value}")
        for url in entry["urls"]:
            _say(f"url:         {url}")
    labels = entry.get("labels") or model.get("labels") or []
    _say("labels:      " + ", ".join(f"{lab['value']}={lab['name']}" for lab in labels))
    installed = info.get("installed")
    _say(f"installed:   {installed['path'] if installed else 'no'}")
    if installed and installed.get("source") == "import":
        _say(f"imported:    {installed.get('origin')} ({installed.get('format', '')})")


def _download(args, cache) -> int:
    from mednextv2.store.catalog import download_model, load_catalog

    entry = load_catalog(cache, args.catalog).get(args.id)
    path = download_model(entry, cache, progress=make_progress(args.progress), force=args.force,
                          replace=args.replace)
    print(path)
    return 0


def _import(args, cache) -> int:
    from mednextv2.store.importer import import_model

    options = dataclass_from_args(ImportOptions, args)
    path = import_model(args.path, cache, model_id=args.model_id, options=options, replace=args.replace,
                        progress=make_progress(args.progress))
    print(f"installed {path.name} in {path}; use it with: mednextv2 segment ... -m {path.name}", file=sys.stderr)
    print(path)
    return 0


def _remove(args, cache) -> int:
    path = cache.remove(args.id)
    print(f"removed {args.id} ({path})", file=sys.stderr)
    return 0


def _path(args, cache) -> int:
    if args.id is None:
        print(cache.home)
        return 0
    if not cache.is_installed(args.id):
        raise InputError(f"model {args.id!r} is not installed in {cache.models_dir}")
    print(cache.model_dir(args.id))
    return 0


_ACTIONS = {"list": _list, "info": _info, "download": _download, "import": _import, "remove": _remove, "path": _path}
