"""Who may act for a company at a relying party: e-service and third-party authorisations."""
