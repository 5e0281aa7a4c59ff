"""The door to the libraries' insides (``app/internals.py``) was read against the
installed versions, and every private name it uses is still there: an upgrade fails
here, with the list of what to re-read, before it fails anywhere else."""

import warnings
from importlib.metadata import version

from app import internals


def reading_list(distributions: set[str]) -> str:
    """What ``internals`` takes from those distributions, one line each."""
    return "\n".join(
        f"  {entry.distribution}: {entry.name} ({entry.use})"
        for entry in internals.PRIVATE
        if entry.distribution in distributions
    )


def test_the_installed_libraries_are_the_versions_the_door_was_read_against():
    changed = {
        name: (checked, version(name))
        for name, checked in internals.CHECKED.items()
        if version(name) != checked
    }
    assert not changed, (
        "app/internals.py was read against other versions: "
        + ", ".join(f"{n} {was} (now {now})" for n, (was, now) in changed.items())
        + ". Re-read what it uses of them, then update CHECKED:\n"
        + reading_list(set(changed))
    )


def test_every_private_name_the_door_uses_is_there():
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet warns as it is imported
        for entry in internals.PRIVATE:
            try:
                entry.reach()
            except Exception as exc:
                missing.append(f"  {entry.distribution}: {entry.name}: {exc!r}")
    assert not missing, (
        "app/internals.py uses names these libraries no longer have; re-read "
        "them and what the door does with each:\n" + "\n".join(missing)
    )


def test_every_distribution_the_door_names_is_checked():
    assert {entry.distribution for entry in internals.PRIVATE} == set(internals.CHECKED)
