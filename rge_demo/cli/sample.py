"""``sample``: N rationales per query, with stated answers, ranks, spread and pass@k."""

from __future__ import annotations

import json

from .common import UsageError, arg, comma_list, command
from .query import gallery_index, load_gallery, load_model, model_profile, query_input, query_instruction


@command("sample", "sample N rationales per query: stated answers, ranks, spread, pass@k (one JSON line per query)",
         parents=("model",), arguments=[
             arg("--text", default="", help="query text (with --gallery)"),
             arg("--image", default=None, help="query image file (with --gallery)"),
             arg("--world", default=None, help="world task(s), comma-separated: sample their evaluation queries"),
             arg("--split", choices=["ind", "ood"], default=None, help="world split (default ind)"),
             arg("--limit", type=int, default=None, minimum=1, maximum=10_000,
                 help="queries per world task (default 4)"),
             arg("--gallery", default=None, help="gallery folder: rank its items for --text/--image"),
             arg("--target", default=None, help="id of the right gallery item (with --gallery)"),
             arg("--instruction", default=None, help="query instruction (default: the model's instruction for the "
                                                     "gallery's meta-task)"),
             arg("-n", type=int, default=8, minimum=1, help="samples per query (default 8)"),
             arg("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)"),
             arg("--seed", type=int, default=0, help="seed of the draws (default 0)"),
             arg("--k", default=None, help="pass@k values, comma-separated, each at most n (default 1,2,4,8 up to "
                                             "n; n is added)"),
             arg("--batch-size", type=int, default=32, minimum=1, maximum=1024,
                 help="generated rows per generate call (default 32; a call holds at least one query's n rows)"),
         ])
def cmd_sample(args) -> int:
    from rge_demo.analysis import sampling

    if (args.world is None) == (args.gallery is None):
        raise UsageError("give --world TASKS or --gallery DIR (with --target and a query)")
    # Each source's own flags: given with the other source, they would be ignored without a word.
    if args.world is not None:
        source, owner = "--world", "--gallery"
        given = {"--text": bool(args.text), "--image": args.image is not None, "--target": args.target is not None,
                 "--instruction": args.instruction is not None}
    else:
        source, owner = "--gallery", "--world"
        given = {"--split": args.split is not None, "--limit": args.limit is not None}
    if stray := [flag for flag, on in given.items() if on]:
        raise UsageError(f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} for {owner}, not {source}")
    sampling.check_options(args.n, args.temperature, args.seed)  # a sentence before the model loads
    ks = None
    if args.k is not None:
        names = comma_list(args.k, "--k")
        try:
            ks = [int(k) for k in names]
        except ValueError:
            raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
        if over := [k for k in ks if k > args.n]:
            raise UsageError(f"--k {over[0]}: pass@k needs k <= n, the samples per query (-n {args.n})")
    sampling.ks_for(args.n, ks)  # SamplingError (an RGEUserError) for a k < 1, before the model loads
    opts = {"n": args.n, "temperature": args.temperature, "seed": args.seed, "ks": ks,
            "batch_size": args.batch_size}
    if args.world is not None:
        from rge_demo.analysis.eval_tasks import world_tasks

        try:
            tasks = world_tasks(comma_list(args.world, "--world"), (args.split or "ind",), args.limit or 4)
        except KeyError as e:
            raise UsageError(e.args[0]) from None
        loaded, _ = load_model(args)
        records = sampling.evaluate_sampling(loaded.encoder, tasks, **opts)
        for r in records:
            print(json.dumps({"model": loaded.spec.name, **r}))
        table = sampling.sampling_table(records)
        print(json.dumps({"model": loaded.spec.name, "summary": {
            name: {k: (None if v != v else round(v, 6)) for k, v in row.items()} for name, row in table.items()}}))
        return 0

    gallery = load_gallery(args.gallery)
    if args.target is None:
        raise UsageError("--gallery needs --target ID: the right item to rank")
    try:
        target = gallery.index_of(args.target)
    except KeyError:
        raise UsageError(f"gallery {gallery.name}: no item {args.target!r} (--target)") from None
    _, profile = model_profile(args)
    inp = query_input(args, args.instruction if args.instruction is not None else query_instruction(gallery, profile))
    loaded, settings = load_model(args)
    index = gallery_index(loaded, settings, gallery, args.batch_size)
    result = sampling.sample_queries(loaded.encoder, [inp], index.matrix, [target], **opts)[0]
    print(json.dumps({"model": loaded.spec.name, "gallery": gallery.name, "target_id": args.target,
                      "target_label": gallery.items[target].label, **result.to_dict()}))
    return 0
