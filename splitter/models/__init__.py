"""Model definitions the splitter ships (torchvision does not import beside torch 2.13 here)."""
