"""Training recipes as YAML files, as timm's ``--config`` and ultralytics' ``cfg/*.yaml``.

A recipe is a flat mapping of :class:`~lolvit.tasks.classify.train.TrainConfig` field names to
values. ``lolvit train --recipe NAME|PATH`` starts from it and command-line flags override it;
without ``--recipe`` the recipe is chosen by the data (:func:`default_recipe`). Every run folder
holds the resolved ``recipe.yaml``, which reproduces the run when passed back with ``--recipe``.
"""
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

RECIPE_DIR = Path(__file__).resolve().parent
DATA_RECIPES = {"digits": "digits", "fashion-mnist": "fashion-mnist"}
FOLDER_RECIPE = "imagefolder"


def recipe_names() -> List[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(recipe: Union[str, Path]) -> Path:
    """A shipped recipe's file by name (``fashion-mnist``), or a YAML path."""
    name = str(recipe)
    if name in recipe_names():
        return RECIPE_DIR / f"{name}.yaml"
    path = Path(name)
    if path.is_dir():
        path = path / "recipe.yaml"  # a run folder
    if not path.is_file():
        raise FileNotFoundError(f"recipe {name!r} is neither a shipped recipe {recipe_names()} nor a YAML file")
    return path


def default_recipe(data: str) -> str:
    """The recipe used when none is named: by dataset, ``imagefolder`` for a folder."""
    return DATA_RECIPES.get(data, FOLDER_RECIPE)


def read_recipe(recipe: Union[str, Path], fields: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """Read and check a recipe against ``fields`` (TrainConfig field name -> default value).

    Returns ``(values, source)``; values are converted to the type of the field's default where
    that is unambiguous (lists for tuples, float for int literals of float fields). Unknown keys,
    a YAML that is not a mapping, and values of the wrong type raise ValueError naming the file.
    """
    import yaml

    path = recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: expected a mapping of training options, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ValueError(f"recipe {path}: unknown option(s) {unknown}; options are {sorted(fields)}")
    values = {k: _coerce(path, k, v, fields[k]) for k, v in data.items()}
    source = path.stem if path.parent == RECIPE_DIR else str(path)
    return values, source


def _coerce(path: Path, key: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return tuple(value) if isinstance(value, list) else value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"recipe {path}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"recipe {path}: {key} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"recipe {path}: {key} must be a mapping, got {value!r}")
        return value
    if type(value) is not type(default):
        raise ValueError(f"recipe {path}: {key} must be {type(default).__name__}, got {value!r}")
    return value
