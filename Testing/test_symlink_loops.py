"""Symbolic link loops given as an input, an output, a model, a dataset or a work folder:
Path.resolve raises RuntimeError, which would be a traceback. Each is refused (exit 2) naming the path."""
from __future__ import annotations

import os
import shutil

import pytest

from mednextv2.cli import main
from segment_fixtures import threshold_bundle

LOOP = "is a symbolic link loop"


@pytest.fixture()
def place(tmp_path, data_dir):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "d.nrrd", tmp_path / "c.nrrd")
    os.symlink(tmp_path / "c.nrrd", tmp_path / "d.nrrd")
    shutil.copytree(data_dir / "mr-breast", tmp_path / "dataset")
    threshold_bundle().save(tmp_path / "model")
    return tmp_path


@pytest.mark.parametrize("command, what", [
    ("segment a -m model -o out.nrrd", "input a"),
    ("segment dataset/breast1_image.nrrd -m model -o c.nrrd", "output c.nrrd"),
    ("segment dataset/breast1_image.nrrd -m a -o out.nrrd", "model a"),
    ("train a -o trained", "the dataset a"),
    ("train dataset -o a", "-o a"),
    ("train dataset -o trained --work-dir a", "work folder a"),
    ("train dataset -o trained --base a", "model a"),
    ("models import a", "cannot import: a"),
])
def test_a_symbolic_link_loop_is_refused_naming_it(place, capsys, command, what):
    words = [str(place / w) if (place / w).exists() or os.path.islink(place / w) or w in ("trained", "out.nrrd")
             else w for w in command.split()]
    rc = main(words + (["--progress", "none"] if words[0] != "models" else []))
    err = capsys.readouterr().err
    name, path = what.rsplit(" ", 1)
    assert rc == 2 and f"{name} {place / path} {LOOP}" in err and "Traceback" not in err, err
    assert not (place / "out.nrrd").exists() and not (place / "trained").exists()


def test_the_python_api_names_a_loop_too(place):
    from mednextv2.errors import InputError
    from mednextv2.inference.image_io import read_image

    with pytest.raises(InputError, match=f"input image {place / 'a'} {LOOP}"):
        read_image(place / "a")
