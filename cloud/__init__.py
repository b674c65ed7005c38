"""Cloud side of infocut: receive encoded frames, run the tail, score, store, alert and serve REST."""
