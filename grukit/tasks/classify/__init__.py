"""The classify task: numeric sequences (univariate or multivariate, variable length) to classes."""
