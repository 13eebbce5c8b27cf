"""What every gati service shares: server lifecycle, health, reflection, metrics, status mapping."""
