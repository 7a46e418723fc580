"""What every `raycls` command shares: the --config/--address options, `a.b=value` overrides,
flags that stand for config keys, and turning library errors into CLI errors.

A flag that stands for a config key is declared once, with its key, through `setting(...)`:
it has no default of its own, so it overrides the config file only when given, and
`load_settings` reads every such flag of the running command back into the config.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click

from raycls.config import Config, load_config

OVERRIDES_HELP = "Settings as section.key=value (e.g. train.lr=3e-4 model.hidden_dim=128)."


def fail(error: Exception) -> NoReturn:
    """A library error as a CLI error: its message, exit status 1, no traceback. An error met
    while a Ctrl-C unwound the work (a lock released twice inside Ray) is the interrupt."""
    from raycls.io.storage import redact

    if _during_interrupt(error):
        raise KeyboardInterrupt from error
    raise click.ClickException(redact(str(error))) from error


def _during_interrupt(error: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


address_option = click.option(
    "--address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Ray cluster address; without one a local Ray is started on the spot.",
)
config_option = click.option(
    "--config",
    "config_file",
    default=None,
    help="YAML file or URI of settings (sections model, data, train, classify).",
)
overrides_argument = click.argument("overrides", nargs=-1)


class SettingOption(click.Option):
    """A flag that overrides one config key (`section.name`), only when given."""

    def __init__(self, param_decls: list[str], *, key: str, **kwargs: Any) -> None:
        section, dot, name = key.partition(".")
        if not dot or section not in Config.__dataclass_fields__:
            raise ValueError(f"setting key {key!r} must look like section.name, e.g. train.lr")
        if kwargs.get("default") is not None:
            raise ValueError(f"{key}: a flag for a config key has no default (the config has)")
        help_text = kwargs.pop("help", None)
        default = _default_of(section, name)
        tag = f"[{key}" + ("]" if default is None else f"; default {default}]")
        kwargs["help"] = f"{help_text} {tag}" if help_text else tag
        super().__init__(param_decls, default=None, **kwargs)
        self.key = key


def _default_of(section: str, name: str) -> Any:
    """The default of config key `section.name` (None for a key without a plain default)."""
    field = Config.__dataclass_fields__[section]
    defaults = field.default_factory()  # type: ignore[misc]
    value = getattr(defaults, name, None)
    return value if isinstance(value, (bool, int, float, str)) else None


def setting(*param_decls: str, key: str, **kwargs: Any) -> Any:
    """`click.option` for a flag that stands for the config key `key` (e.g. "train.epochs")."""
    return click.option(*param_decls, cls=SettingOption, key=key, **kwargs)


def given_settings(ctx: click.Context) -> dict[str, dict[str, Any]]:
    """The setting flags given on this command line, as {section: {name: value}}."""
    sections: dict[str, dict[str, Any]] = {}
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, SettingOption) and value is not None:
            section, _, name = param.key.partition(".")
            sections.setdefault(section, {})[name] = value
    return sections


def load_settings(config_file: str | None, overrides: tuple[str, ...]) -> Config:
    """Defaults, then --config, then the setting flags given, then `a.b=value` overrides."""
    ctx = click.get_current_context()
    return load_config(config_file, overrides, **given_settings(ctx))
