"""Applications built on the `anygpt` package: the web demo, scripted generation, LangChain."""
