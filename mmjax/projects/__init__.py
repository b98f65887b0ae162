"""Projects: code that exists for one dataset or one study, beside the general core.

Each project is a package here (its models, data and metrics), with its configs under
experiments/configs/proj/<name>/, its scripts under experiments/proj/<name>/ and its story and
numbers in its README.md. The core never imports a project (tests/test_layering.py); a config
names a project's component by module path (mmjax.registry).
"""
