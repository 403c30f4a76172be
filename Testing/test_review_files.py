"""The review page reads and writes only below its data root (cli/review/files.py). Each way out is tried;
each would be let through by a check that only joined the name (`..`, absolute), only compared strings
(`data-evil`), or did not resolve links."""
import os

import pytest

from DiffusionRegistrationLib.cli.review.files import existing_file, image_names, inside
from DiffusionRegistrationLib.errors import RegistrationError


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.nii.gz").write_bytes(b"inside")
    evil = tmp_path / "data-evil"
    evil.mkdir()
    (evil / "secret.nii.gz").write_bytes(b"outside")
    (tmp_path / "top.nii.gz").write_bytes(b"outside")
    os.symlink(evil / "secret.nii.gz", data / "to-sibling.nii.gz")
    os.symlink(tmp_path / "top.nii.gz", data / "sub" / "up.nii.gz")
    os.symlink(data / "sub" / "a.nii.gz", data / "alias.nii.gz")  # a link that stays inside is fine
    return data


def test_a_file_below_the_root_is_its_resolved_path(root):
    assert existing_file(root, "sub/a.nii.gz", "fixed image") == (root / "sub" / "a.nii.gz").resolve()
    assert existing_file(root, "alias.nii.gz", "fixed image") == (root / "sub" / "a.nii.gz").resolve()


def test_parent_steps_are_refused_even_when_they_come_back_inside(root):
    for name in ("../top.nii.gz", "sub/../../top.nii.gz", "sub/../sub/a.nii.gz", "..\\top.nii.gz"):
        with pytest.raises(RegistrationError, match=r"fixed image .*'\.\.' is not accepted"):
            inside(root, name, "fixed image")


def test_absolute_paths_are_refused(root):
    for name in (str(root / "sub" / "a.nii.gz"), "/etc/passwd", "C:\\data\\a.nii.gz", "\\\\server\\share\\a"):
        with pytest.raises(RegistrationError, match="absolute paths are not accepted"):
            inside(root, name, "moving image")


def test_links_out_of_the_root_are_refused_also_into_a_sibling_whose_name_starts_like_the_root(root):
    for name in ("to-sibling.nii.gz", "sub/up.nii.gz"):
        with pytest.raises(RegistrationError, match="leads outside the data folder"):
            inside(root, name, "moving mask")


def test_missing_and_empty_names_are_refused_with_the_role(root):
    with pytest.raises(RegistrationError, match="fixed mask 'none.nii.gz': no such file"):
        existing_file(root, "none.nii.gz", "fixed mask")
    with pytest.raises(RegistrationError, match="fixed mask: no file chosen"):
        existing_file(root, " ", "fixed mask")


def test_the_list_offers_only_images_that_may_be_used(root):
    (root / "notes.txt").write_text("not an image")
    assert image_names(root) == ["alias.nii.gz", "sub/a.nii.gz"]
