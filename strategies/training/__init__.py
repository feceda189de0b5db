"""What every strategy trains and is evaluated with: the paper's recipe (``recipe``), the lean
training loop and its SGD (``lean_loop``), gradient clipping (``clipping``), tensor loaders
(``tensor_data``), the shared training hyperparameters (``train_config``) and task-agnostic
evaluation (``agnostic``)."""
