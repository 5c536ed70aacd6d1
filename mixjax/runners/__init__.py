"""Runners: training the runs a mixture method asks for (`run_mix` end to end, an offline method's
sweep, li2025's adaptive sweep, an online method's prerequisite runs). The methods themselves, the
rules that propose runs and set weights, are in `mixjax.methods`; runners sit a layer above them."""
