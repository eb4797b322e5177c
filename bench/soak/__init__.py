"""The soak (`python -m bench.soak`, `make soak`): the daemon under sustained and hostile load;
__main__.py lists the parts and their targets."""
