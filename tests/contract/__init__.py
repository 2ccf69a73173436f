"""One contract for both gateways: what the application sees must not depend on which runs."""
