"""Estimators: mutual information (the information plane), concept metrics, similarity."""
