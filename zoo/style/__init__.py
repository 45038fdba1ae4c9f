"""Neural style transfer: the perceptual loss network and losses, feed-forward training, and stylizing images."""
