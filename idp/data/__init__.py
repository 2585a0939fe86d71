"""Company data released with consent: categories, sources and the data API."""
