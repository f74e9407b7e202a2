"""One router per resource: jobs, images, models, previews, health."""
