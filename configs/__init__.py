"""The experiment configs: one module per experiment, each with `get_config(arg)`.

This folder is installed as `bmqa_jax.configs` (bmqa_jax/configs links here),
so the commands reach a config by name from any folder
(`bmqa-train --config=quickstart:tiny=True`, bmqa_jax/cli/config_flag.py) and
still by file (`--config=configs/quickstart.py:tiny=True`); code imports them
as `from bmqa_jax.configs import quickstart`. Every config reads its
`key=value,...` argument with `bmqa_jax.config_args.parse_arg`; its docstring
lists the arguments.
"""
