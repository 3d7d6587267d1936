"""The experiment configs: one module per experiment, each with `get_config(arg)`.

Launch scripts load them by file (`--config=configs/quickstart.py:tiny=True`,
ml_collections' config_flags); code and tests import them as this package
(`from configs import quickstart`), which `pip install -e .` installs beside
`bmqa_jax`. Every config reads its `key=value,...` argument with
`bmqa_jax.config_args.parse_arg`; its docstring lists the arguments.
"""
