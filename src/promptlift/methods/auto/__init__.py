"""Methods made of other methods, by name: pipelines (`a+b+c`) and `auto`, a portfolio raced on dev."""
