"""``resnet-parity bench``: placeholder until the benchmark lands."""


def add_parser(sub) -> None:
    pass
