"""One module per `gptlab` verb: `add_parser(subparsers)` declares it, `run(args)` does it."""
