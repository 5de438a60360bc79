"""The one kind of test target in tests/: a pytest file run as its own process."""

def pytest_test(name, deps = [], size = "medium", **kwargs):
    """tests/<name>.py, which ends with `pytest_main.main(__file__)`, as a py_test.

    Each test file is a process of its own: several configure logical CPU devices or start
    worker processes before TensorFlow initialises.

    Args:
      name: the test file's name without ".py".
      deps: what the file imports besides pytest_main.
      size: Bazel's test size; most files compile XLA programs, hence "medium".
      **kwargs: other py_test attributes (data, tags).
    """
    native.py_test(
        name = name,
        srcs = [name + ".py"],
        python_version = "PY3",
        size = size,
        deps = deps + [":pytest_main"],
        **kwargs
    )
