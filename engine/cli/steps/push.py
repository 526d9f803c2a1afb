"""``push``: a merged model to the Hugging Face Hub, with its model card (engine/ship/publish.py).
In the cockpit an upload is offered after a dry run of the same folder and repository."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import MenuAction, ShipChoice, Step, need_model_dir, register, silent, size
from engine.cli.steps import stderr_progress as progress
from engine.errors import UserError


def add_args(p) -> None:
    p.add_argument("model_dir", metavar="DIR", help="a merged (or quantized) model folder")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent and print the card")
    p.add_argument("--run-dir", help="the run folder for the model card (default: found from DIR)")
    p.add_argument("--message", help="the commit message")
    p.add_argument("--new-card", action="store_true", help="replace a README.md that was not generated")


def run(args) -> int:
    from engine.ship.publish import push

    r = push(
        args.model_dir,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        run_dir=args.run_dir,
        message=args.message,
        new_card=args.new_card,
        progress=progress if not args.dry_run else silent,
    )
    head = "would upload" if r.dry_run else "uploaded"
    print(
        f"{head} {len(r.files)} files, {size(r.total_bytes)}, to {args.repo_id}"
        + (" (private)" * args.private)
    )
    width = max(len(n) for n, _ in r.files)
    for name, nbytes in r.files:
        print(f"  {name:<{width}}  {size(nbytes):>10}")
    for note in r.notes:
        print(f"note: {note}")
    if r.dry_run:
        print("\n--- README.md (model card) ---")
        print(r.card)
    else:
        print(f"done: {r.url}")
    return 0


def check(c: ShipChoice) -> None:
    from engine.ship.publish import check_repo_id

    need_model_dir(c)
    if not c.repo_id:
        raise UserError("push needs the Hub repository", "type USER/NAME in 'repo id'")
    check_repo_id(c.repo_id)


def job(c: ShipChoice, run_dir: Path | None, dry_run: bool):
    from engine.run import lineage
    from engine.ship.publish import push

    def summary(r) -> str:
        total = lineage.human_size(r.total_bytes)
        if r.dry_run:
            names = ", ".join(n for n, _ in r.files)
            return f"would upload {len(r.files)} files, {total}, to {r.repo_id}: {names}"
        return f"uploaded {len(r.files)} files, {total}: {r.url}"

    label = f"push {'dry run ' if dry_run else ''}{c.repo_id}"
    return label, push, (c.model_dir, c.repo_id), {"dry_run": dry_run}, summary


register(
    Step(
        ("push",),
        "upload a merged model to the Hugging Face Hub",
        add_args,
        run,
        order=50,
        actions=(
            MenuAction(
                "push_dry",
                "push: dry run (what would be sent, the model card)",
                check,
                lambda c, r: job(c, r, True),
                ticks="hub_upload",
            ),
            MenuAction(
                "push",
                "push: upload to the Hugging Face Hub (after a dry run)",
                check,
                lambda c, r: job(c, r, False),
            ),
        ),
    )
)
