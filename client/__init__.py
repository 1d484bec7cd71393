"""The ClientApp a hospital runs next to its data: local DP training and evaluation."""
