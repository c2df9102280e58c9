"""Forecasting: multi-step quantile forecasts of one or more series with known-future and past covariates."""
