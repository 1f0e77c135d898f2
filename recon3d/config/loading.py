"""Loading a configuration: YAML files merged onto the typed schema left to right, then `key=value` overrides, in
struct mode, so that a typo or a wrong type fails before any work starts, naming the key and suggesting the nearest
valid one. The only module that imports omegaconf (inside the functions: `import recon3d.config` stays light)."""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

from recon3d.config.schema import Config
from recon3d.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "configs"  # the configs installed with recon3d (configs/ in the repo)


def _suggest(key: str, node: Any) -> str:
    candidates = [str(k) for k in node.keys()] if hasattr(node, "keys") else []  # not a mapping: nothing to suggest
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(candidates)})"


def _merge(base: Any, other: Any, where: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ValidationError, OmegaConfBaseException) as err:
        full_key = getattr(err, "full_key", None) or ""
        parent_path, _, leaf = str(full_key).rpartition(".")
        if isinstance(err, ConfigKeyError) or "not in" in str(err):
            hint = _suggest(leaf, OmegaConf.select(base, parent_path) if parent_path else base)
            raise ConfigError(f"{where}: unknown key {full_key!r}{hint}") from None
        raise ConfigError(f"{where}: bad value for {full_key!r}: {str(err).splitlines()[0]}") from None


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """A Config from the schema defaults, YAML `files` merged left to right, then `key=value` `overrides`.

    Raises ConfigError: a file is missing or not a mapping, a key is unknown (with a suggestion), a value has the
    wrong type, or a cross-field rule fails."""
    from omegaconf import OmegaConf

    cfg = _schema_node(Config)
    for path in files:
        path = config_file(path)
        loaded = _read_yaml(path)
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        named = OmegaConf.select(loaded, "train.deepspeed_config")
        if named:  # a file named inside a config file is found from that file's folder too
            loaded.train.deepspeed_config = str(config_file(named, beside=path))
        cfg = _merge(cfg, loaded, str(path))
    return _finish(_overridden(cfg, overrides))


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of cfg with `key=value` overrides applied as load_config applies them (checked against the schema;
    `${section.key}` takes another key's value, e.g. train.val_every_epochs=${demo.gan_eval_every_epochs}).

    Raises ConfigError: as load_config."""
    return _finish(_overridden(_schema_node(cfg), overrides))


def _schema_node(cfg: Any) -> Any:
    """The OmegaConf node of a Config class or instance, in struct mode; mappings (e.g. source.front_by_category)
    stay open, since they take keys the schema cannot name."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cfg)
    OmegaConf.set_struct(node, True)
    defaults = Config()
    for section in fields(Config):
        for f in fields(getattr(defaults, section.name)):
            if isinstance(getattr(getattr(defaults, section.name), f.name), dict):
                OmegaConf.set_struct(node[section.name][f.name], False)
    return node


def _overridden(node: Any, overrides: Sequence[str]) -> Any:
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = _merge(node, OmegaConf.from_dotlist([item]), f"override {item!r}")
    return node


def _finish(node: Any) -> Config:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_object(node)
    except ConfigError:
        raise
    except Exception as err:  # type conversion errors surface here for interpolations
        raise ConfigError(str(err).splitlines()[0]) from None


def _read_yaml(path: Path) -> Any:
    """A YAML file through OmegaConf; a syntax error, a duplicate key or bytes that are not UTF-8 become one
    ConfigError line naming the file and where."""
    import yaml
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def config_file(path: str | Path, beside: Path | None = None) -> Path:
    """A config file as given; a relative path that is not there is looked up beside `beside` (the config file
    that names it) and then among the configs installed with recon3d, with or without a leading configs/ (so that
    -c configs/train/cpu-small.yaml works from any folder). ConfigError names every place it looked."""
    path = Path(path)
    tried = [path]
    if not path.is_absolute():
        parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
        tried += ([(beside.parent / path).resolve()] if beside else []) + [SHIPPED.joinpath(*parts)]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    looked = f" (looked in: {', '.join(str(c.parent) for c in tried)})" if len(tried) > 1 else ""
    raise ConfigError(f"config file not found: {path}{looked}")


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A plain, JSON-ready dict of a config dataclass (for manifests and logs)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg
