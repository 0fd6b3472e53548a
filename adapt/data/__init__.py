"""Images, labelled dataset readers, density maps and the torch datasets built on them."""
