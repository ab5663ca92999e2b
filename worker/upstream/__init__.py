"""The upstream (Limio Partner Orders) client: token, classification, calls."""
