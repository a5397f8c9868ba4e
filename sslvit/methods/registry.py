"""The registry that maps a method's command-line name to its class and config."""

_METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a `Method` subclass available as `--method NAME`."""

    def add(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as `name`, or a one-line error listing the known ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _METHODS[name]


def method_config_class(name: str) -> type:
    """The config dataclass of the method registered as `name`."""
    return method_class(name).config_class
