python recipe.py --yes
