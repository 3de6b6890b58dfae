"""The machinery behind the demo, the tests and the benchmarks: the example app's processes,
the folder broker, and waits that always have a deadline. Nothing here belongs in your app."""
