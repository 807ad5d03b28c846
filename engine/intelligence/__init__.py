"""Customer intelligence: pure, vectorised computations over the shop's own history."""
