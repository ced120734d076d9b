"""One module per `gptlab` verb, each with `run(config)`: the CLI (gptlab.cli) builds the verb's
settings from its flags and imports the module only to run it."""
