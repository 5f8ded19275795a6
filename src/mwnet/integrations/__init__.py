"""Bridges to training frameworks. Each imports its framework, an optional extra of mwnet;
the rest of mwnet never imports them."""
