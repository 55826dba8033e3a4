"""Run-level analyses over a runs/ directory; each module with a CLI."""
