"""The networks and their engines: SAM (and its backends), encoder stages, the coarse net, DeSAM, SAMed, tiling."""
