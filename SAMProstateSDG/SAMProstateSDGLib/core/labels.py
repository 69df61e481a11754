"""The label values every output uses: 1 = prostate, or for zonal methods 1 = transition zone, 2 = peripheral zone."""

PROSTATE_LABEL = 1
ZONE_NAMES = {1: "transition zone", 2: "peripheral zone"}
