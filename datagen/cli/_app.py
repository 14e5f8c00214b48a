"""The typer application object every command module registers on."""

import typer

app = typer.Typer(
    name="datagen",
    help="Make the classic unsupervised-video datasets as sharded WebDataset/HDF5 stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
