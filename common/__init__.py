"""Leaf modules every layer may import (errors, sizes, the class tables, YAML loading): they
import nothing else of orstream, so no layer has to reach up or sideways for them."""
